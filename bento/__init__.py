"""The BentoML service (`bento.service:CatDogClassifier`), torch-free."""
