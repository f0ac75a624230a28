"""Ray actors: thin shells that hold a model, engine or client and call into `batray/`. No math here."""
