"""Model: event embedder, contextualizer (decoder-only transformer), parameter and FLOP accounting."""
