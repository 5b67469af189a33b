"""The method: a source's layers tied into a recursive model (convert, paper sec. 3.1), relaxed with
SVD-initialised layer-wise LoRA (relax, sec. 3.2), and the reduced-size baseline's shape."""
