"""The special text token ids: first in every tokenizer, relied on by the joint objective."""

PAD, BOS, EOS, UNK = 0, 1, 2, 3
SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>")  # their strings, in id order
