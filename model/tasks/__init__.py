"""Tasks beyond generation: in-context editing and captioning of a trained run."""
