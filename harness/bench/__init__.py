"""`cfh bench`: cfh's training and sampling throughput against the release-style reference."""
