"""Model, data and training support of the search: model zoo, datasets, quantizers, fake-quant models, the execution graph, FP training and QAT."""
