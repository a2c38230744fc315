"""Net assembly: a config or a checkpoint -> a Net with its weights (stored configs read and vetted, renamed
targets applied, pretrained and published weights loaded). Below both trainer/ and features/."""
