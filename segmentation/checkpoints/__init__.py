"""Weights files: finding and reading them safely (``files``), naming (``names``), loading (``loading``)."""
