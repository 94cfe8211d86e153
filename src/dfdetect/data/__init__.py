"""Where crops come from and how they are fed: dataset sources, crop tables, labels and loaders."""
