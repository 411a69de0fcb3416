"""Image translation for DiGA's cross-domain mixture (CDMix): a CycleGAN (two ResNet generators, two
multi-scale PatchGAN discriminators, LSGAN) with DiGA's semantic-edge loss, trained by
``segadapt train-translator``; ``segadapt.methods.diga`` loads its source->target generator."""
