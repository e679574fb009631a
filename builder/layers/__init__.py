"""The layer catalog's entries, one module per family as torch.nn splits its modules
(conv.py, pooling.py, normalization.py, activation.py, rnn.py, transformer.py, ...).
builder/catalog.py is the index that collects them."""
