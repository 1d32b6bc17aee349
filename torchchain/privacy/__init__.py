"""Privacy: differential privacy applied on the client, and secure aggregation by secret sharing.

Nothing here knows the chain or Hydra; the runtime wires it.
"""
