"""Worker process of the corruption test: reads damaged files, one per request, and says how
each reader met it. Run as ``python corruption_worker.py``; one JSON request per stdin line,
``{"kind": ..., "path": ..., "name": ...}``, one JSON reply per stdout line:

- ``ok``: every record was read (a flipped byte in a data page may give a wrong value);
- ``rejected``: a DataFormatError or ValueError whose message names the damaged file;
- ``bad``: any other exception, or a message that does not name the file (``detail`` says).

The first line written, once the imports are done, is ``{"ready": true}``. A signal or a hang
shows up in the parent as a missing reply; the parent restarts the worker.
"""

import json
import sys
import traceback


def read(kind: str, path: str) -> None:
    if kind == "signal":  # the harness's own check: a reader that dies as LMDB did
        import os
        import signal

        os.kill(os.getpid(), signal.SIGBUS)
    if kind == "hang":
        import time

        time.sleep(3600)
    if kind == "checkpoint":
        from so2nn.models._checkpoint import load_checkpoint

        load_checkpoint(path)
    elif kind == "fairchem":
        from so2nn.models.fairchem import load_fairchem_checkpoint

        load_fairchem_checkpoint(path)
    else:
        from so2nn.data import open_dataset

        dataset = open_dataset(path)
        for i in range(len(dataset)):
            dataset[i]


def main() -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a signal ends the worker without a core dump
    # imported once, before the first request
    import so2nn.data
    import so2nn.models.fairchem

    del so2nn
    sys.stdout.write(json.dumps({"ready": True}) + "\n")
    sys.stdout.flush()

    for line in sys.stdin:
        request = json.loads(line)
        try:
            read(request["kind"], request["path"])
            reply = {"outcome": "ok"}
        except ValueError as error:  # DataFormatError is a ValueError
            named = request["name"] in str(error)
            reply = {"outcome": "rejected" if named else "bad",
                     "detail": f"{type(error).__name__}: {error}"[:300]}
        except Exception as error:
            reply = {"outcome": "bad", "detail": "".join(traceback.format_exception(error))[-1500:]}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
