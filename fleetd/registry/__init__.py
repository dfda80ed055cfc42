"""The etcd registry: keyspace, client edge, domain operations."""
