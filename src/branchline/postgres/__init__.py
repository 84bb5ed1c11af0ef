"""Find Postgres binaries and run clusters (as a non-root user when run as root)."""

from branchline.postgres.binaries import PgBinaries, find_binaries
from branchline.postgres.cluster import Cluster, ClusterMeta, ClusterState

__all__ = ["Cluster", "ClusterMeta", "ClusterState", "PgBinaries", "find_binaries"]
