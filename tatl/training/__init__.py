"""Training one group of networks: the Eq. 1-3 loss, the training loop (resume, early stopping, NaN guard, AMP),
DistributedDataParallel wrapping and the context-restoration pretext."""
