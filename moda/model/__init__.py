"""Models around the root model files: building MODA (build, tokenizer), the BLIP baseline, the Auto-class
registration (auto_classes), loading a user-given model without running its own code unasked (loading), and the
text-generation pipelines of the teacher's refiner and the LLM judge (text_generation). Imports only moda.io."""
