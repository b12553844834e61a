"""A Flower app on the bundled digits task with secagg as its aggregation backend (see README.md)."""
