"""Tests of the blob stores: one contract suite run against every store, and each store's own behaviour."""
