"""Provider interfaces (typing.Protocol) and their local and cloud variants.

Every create is idempotent by name, every delete succeeds when the thing is
already gone, and every provider lists what it owns, which is what reconcile
relies on. Providers never import pipelines.
"""
