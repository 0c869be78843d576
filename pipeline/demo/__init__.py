"""The offline demo: render labeled videos from photographs, extract, train and report."""
