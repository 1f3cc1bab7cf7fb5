"""The user's data: files read through `datasets` (loading.py), columns guessed and checked (columns.py), images
checked (images.py), archives unpacked safely (archive.py) and examples batched (batches.py)."""
