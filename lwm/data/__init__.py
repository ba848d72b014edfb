"""Data layer: token store, input formats, chat/QA data, masked sequence packing, batches."""
