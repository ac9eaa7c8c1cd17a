"""PyNet: launch, provision and deploy a stateful TCP service on one cloud host."""
