"""Several proxies on a NATS JetStream bus (``--bus``), sharing each upstream.

``bus`` is the only module that imports nats-py (and only with ``--bus``);
``subjects`` names things on the bus; ``upstream/clustered.py`` is the link that
holds the upstream when this node has the lease, and follows the holder
otherwise.  ``docs/cluster.md`` describes it for operators.
"""


class LeaseTaken(Exception):
    """Another node holds the lease (or ours was lost)."""
