"""The extraction product: features from trained or published networks, stores, k-NN and the report card."""
