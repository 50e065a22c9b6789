"""The torch-free ground floor shared by model/, harness/ and reports/: errors, atomic
writes, the run folder's files and the vocabulary of config choices."""
