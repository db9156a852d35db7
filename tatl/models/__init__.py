"""Networks: U/Link encoder-decoders (smp and the paper-faithful EfficientNet-b0), several heads on one encoder,
weight transfer between them and BatchNorm folding for prediction."""
