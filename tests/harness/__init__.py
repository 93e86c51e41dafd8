"""Test harnesses that start real servers (etcd, Consul …) for the backend tests."""
