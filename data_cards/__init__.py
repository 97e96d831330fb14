"""Dataset-card templates for the Hugging Face export, with licences and citations per source."""
