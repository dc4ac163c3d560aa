"""VASP's ``OUTCAR`` and ``vasprun.xml`` indexed by byte offsets, each ionic step parsed by ASE
when it is asked for.

ASE reads either file whole (``vasprun.xml`` as one XML tree), which for a long molecular
dynamics run is gigabytes held at once. Both files are a header followed by one block per
ionic step, so an index of the blocks' byte ranges lets ASE's own parsers read one step at a
time, with the same results as ``ase.io.read(path, index)``:

* ``OUTCAR``: the header is every line up to the first SCF ``Iteration`` line (parsed once:
  species, ions per type, and the constraints of a ``CONTCAR``/``POSCAR`` beside the file);
  a step ends four lines after its ``FREE ENERGIE OF THE ION-ELECTRON SYSTEM`` line, as ASE
  cuts it;
* ``vasprun.xml``: a step is a ``<calculation>`` element; it is parsed as a document made of
  the file's header (everything before the first step: parameters, k-points, atom types, the
  initial structure with its selective dynamics), that step, and the closing tag.

A last step cut off by the end of the file (a run still going) is left out, as ASE leaves it.
"""

from __future__ import annotations

import io
import re

__all__ = ["outcar_header", "outcar_steps", "read_outcar_step", "read_vasprun_step", "vasprun_steps"]

_SCF_END = b"FREE ENERGIE OF THE ION-ELECTRON SYSTEM"
_LINES_AFTER_SCF_END = 4  # the energies follow the delimiter (ase.io.vasp_parsers' build_chunk)
_CALCULATION = re.compile(rb"<calculation[\s>]")
_CALCULATION_END = b"</calculation>"


def _line_end(buffer, start: int) -> int:
    """The offset after the line that holds ``start`` (its newline included)."""
    end = buffer.find(b"\n", start)
    return len(buffer) if end < 0 else end + 1


def outcar_steps(buffer) -> tuple[int, list[tuple[int, int]]]:
    """``(end of the header, [(start, end) of each complete ionic step])`` of an OUTCAR's bytes;
    the header's end is ``-1`` when the file has no SCF iteration (ASE: an incomplete OUTCAR)."""
    first = buffer.find(b"Iteration")
    if first < 0:
        return -1, []
    header_end = _line_end(buffer, first)
    steps, start = [], header_end
    while (found := buffer.find(_SCF_END, start)) >= 0:
        end = _line_end(buffer, found)
        for _ in range(_LINES_AFTER_SCF_END):
            if end >= len(buffer):  # the step's energies are not written yet
                return header_end, steps
            end = _line_end(buffer, end)
        steps.append((start, end))
        start = end
    return header_end, steps


def _lines(data: bytes) -> list[str]:
    # latin-1 reads any byte: an OUTCAR is ASCII but for what its POTCAR titles may hold
    return data.decode("latin-1").splitlines(keepends=True)


def outcar_header(buffer, header_end: int, directory) -> dict:
    """ASE's header of an OUTCAR (species, their counts, constraints from ``directory``)."""
    from ase.io.vasp_parsers.vasp_outcar_parsers import OutcarHeaderParser

    return OutcarHeaderParser(workdir=directory).build(_lines(bytes(buffer[:header_end])))


def read_outcar_step(buffer, header: dict, start: int, end: int):
    """The ``Atoms`` (with a single-point calculator of the step's results) of bytes ``start:end``."""
    from ase.io.vasp_parsers.vasp_outcar_parsers import OUTCARChunk

    return OUTCARChunk(_lines(bytes(buffer[start:end])), header).build()


def vasprun_steps(buffer) -> list[tuple[int, int]]:
    """``[(start, end)]`` of each complete ``<calculation>`` element of a ``vasprun.xml``'s bytes."""
    steps, start = [], 0
    while (found := _CALCULATION.search(buffer, start)) is not None:
        end = buffer.find(_CALCULATION_END, found.start())
        if end < 0:
            break
        steps.append((found.start(), end + len(_CALCULATION_END)))
        start = steps[-1][1]
    return steps


def read_vasprun_step(buffer, header_end: int, start: int, end: int):
    """The ``Atoms`` of the ``<calculation>`` at bytes ``start:end``, read by ASE with the header
    (the file's bytes before ``header_end``)."""
    from ase.io.vasp import read_vasp_xml

    document = bytes(buffer[:header_end]) + bytes(buffer[start:end]) + b"\n</modeling>\n"
    return next(read_vasp_xml(io.BytesIO(document), index=-1))
