"""so2nn models in other simulation engines.

- :mod:`so2nn.integrations.torch_sim`: torch-sim's model interface, batched relaxations and
  molecular dynamics of many systems at once (``pip install -e ".[sim]"``).
"""
