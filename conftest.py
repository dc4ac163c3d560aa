"""Doctest collection of so2nn's own modules: the optional integrations are skipped when the
engine they need is not installed (their tests in tests/ skip the same way)."""

import importlib.util

collect_ignore_glob = [] if importlib.util.find_spec("torch_sim") else ["so2nn/integrations/torch_sim/*"]
