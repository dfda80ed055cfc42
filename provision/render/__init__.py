"""Cluster model -> each node's user-data (cloud-config) and the node manifest."""
