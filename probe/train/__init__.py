"""Floor 3, train: the curriculum's options (config), what a run starts from (start), the loop (loop), its
resumable state (state) and its parts past one process (distributed). Imports model, data and the files floor;
never capture (its sibling) nor any analysis (the search summary is passed in as a callback)."""
