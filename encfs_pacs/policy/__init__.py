"""The process allow-list: who is calling (identity), and what the policy lets it do (decide).

``model`` holds the rule types, ``loader`` turns a TOML file into a validated Policy,
``identity`` resolves a FUSE caller from /proc, ``decide`` is the pure decision function,
``guard`` holds the stateful ransomware controls (write-once grace, rate guard), ``editor``
changes policy files for the admin CLI, and ``replay`` builds suggestions and simulations
from recorded decisions. Nothing here imports the FUSE layer.
"""
