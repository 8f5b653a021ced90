"""Training data: WebDataset tar shards in the sample contract (``data_tools.sample_format``),
mixed by weight, streamed with a shuffle buffer, split across processes and dataloader workers
without duplication, with a resume position, and encoded into model inputs in the workers."""
