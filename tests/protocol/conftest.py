# tiny_model.py registers its model type on import; the tests import it once as `tiny_model`.
# Collected for doctests it would be imported a second time under another module name, as a
# second class under the same registered name (which the registry refuses).
collect_ignore = ["tiny_model.py"]
