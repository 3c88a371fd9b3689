"""The store-and-forward spool for C-STORE (issue 12): index, durable writes, uploader, admin."""
