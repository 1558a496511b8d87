"""autointerp-engine: harvest -> interpret -> score -> report, one package per stage (see the README's Layout)."""
