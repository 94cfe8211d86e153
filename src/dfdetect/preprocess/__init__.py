"""Videos to face crops: the frames, faces and SRM stages, and the runner they share."""
