"""A codec file's header as bytes: its JSON deflated (zlib) against a preset dictionary from format
version 3 on (RFC 1950's FDICT), of the names and keys every header repeats (~0.4 KB less a file,
5-7 % of one of a few KB); versions 1 and 2 deflated it alone. Format 6 appends the records of EPR's
spike-and-slab prior, per-layer groups and latent biases (~100 bytes less a 4 KB EPR file)."""

from __future__ import annotations

import zlib

__all__ = ["EPR_DICT", "HEADER_DICT", "deflate_header", "header_dict", "inflate_header"]

# Part of the format from version 3 (a test pins its crc32): changing it needs a new version. Most
# repeated fragments last, where deflate's distances are shortest.
HEADER_DICT = "".join(
    (
        '"bn1.running_mean","bn1.running_var","bn1.num_batches_tracked","dtype":"torch.int64","store":"varint"',
        '"wavelet":"haar","selection":"lowpass","seed":0,"latent_dim":4,"block_size":16,"hidden":32,',
        '"fit_steps":1000,"kl_weight":1.0,"rate_weight":1.0,"init_step":0.25,"quantizer":"kmeans","codebook":32,',
        '"quantizer":"none","store":"coded","index":"bitmap",',
        '{"meta":{"model_args":{"name":"lenet","num_classes":10,"in_channels":1,"image_size":28},',
        '"config":{"model":{"name":"lenet"},"kernel":{"keep":1.0,"axes":null,"name":"dct"},',
        '"method":{"init":"project","name":"sparse_vd","threshold":3.0,"kl_scale":1.0,"kl_warmup_epochs":3,',
        '"finetune_epochs":0,"log_sigma2_init":-10.0},"layers":{"skip_first":false,"skip_last":false,"name":"all"},',
        '"codec":{"name":"uniform","bits":8,"other":"float16","finetune_epochs":0}}},',
        '"spec":{"quantizer":"uniform","bits":8,"other":"float16"},"records":[',
        '{"name":"classifier.0.parametrizations.weight.0.decoder.0.weight","shape":[32,4],"kind":"exact",',
        '"store":"torch.float16","side":256},{"name":"classifier.0.parametrizations.weight.0.decoder.2.bias",',
        '{"name":"features.0.parametrizations.weight.original","shape":[20,1,5,5],"kind":"symbols",',
        '"prior":"features.0.parametrizations.weight.0.prior_log_scale","lo":-1,"hi":1},',
        '{"name":"features.0.parametrizations.weight.0.decoder_log_step","shape":[1,1,5,5],"kind":"exact",',
        '"store":"torch.float16","side":50},{"name":"features.0.parametrizations.weight.0.decoder_shift",',
        '{"name":"classifier.0.bias","shape":[500],"kind":"raw","store":"torch.float16","side":1000},',
        '{"name":"classifier.0.parametrizations.weight.original","shape":[4740],"kind":"values",',
        '"quantizer":"uniform","step":0.1,"side":34},',
        '{"name":"classifier.0.parametrizations.weight.0.mask","shape":[500,800],"dtype":"torch.bool",',
        '"kind":"mask","kept":4740,"index":"gaps","escape":64,"side":359},',
        '{"name":"features.0.bias","shape":[20],"kind":"raw","quantizer":"uniform","step":0.03,"side":19},',
        '{"name":"features.0.parametrizations.weight.original","shape":[321],"kind":"values","quantizer":"uniform",',
        '"step":0.1,"side":19},{"name":"features.0.parametrizations.weight.0.mask","shape":[20,1,5,5],',
        '"dtype":"torch.bool","kind":"mask","kept":321,"index":"bitmap","escape":0,"side":6}],"ans_words":',
    )
).encode()


# Part of the format from version 6 (a test pins its crc32), after HEADER_DICT.
EPR_DICT = "".join(
    (
        '"method":{"init":"project","name":"epr","rate_weight":4,"init_step":0.25,"prior":"spike_laplace",',
        '"group":"layer","biases":"latents"},"model_args":{"name":"lenet5_caffe",',
        '"kernel":{"keep":1.0,"axes":null,"name":"identity"},',
        '{"name":"features.0.parametrizations.weight.0.prior_zero_logit","shape":[1,1,1,1],"kind":"exact",',
        '"store":"torch.float16","side":2},',
        '{"name":"classifier.0.parametrizations.bias.original","shape":[500],"kind":"symbols",',
        '"prior":"classifier.0.parametrizations.bias.0.prior_log_scale",',
        '"zero":"classifier.0.parametrizations.bias.0.prior_zero_logit","lo":-1,"hi":1},',
        '{"name":"classifier.0.parametrizations.bias.0.decoder_log_step","shape":[1],"kind":"exact",',
        '"store":"torch.float16","side":2},{"name":"classifier.0.parametrizations.bias.0.decoder_shift",',
        '"shape":[1],"kind":"exact","store":"torch.float16","side":2},',
        '{"name":"classifier.0.parametrizations.bias.0.prior_log_scale","shape":[1],"kind":"exact",',
        '"store":"torch.float16","side":2},{"name":"classifier.0.parametrizations.bias.0.prior_zero_logit",',
        '"zero":"features.0.parametrizations.weight.0.prior_zero_logit","lo":-1,"hi":1},',
    )
).encode()


def header_dict(version: int) -> bytes | None:
    """The preset dictionary of format `version` (None before 3)."""
    if version < 3:
        return None
    return HEADER_DICT + EPR_DICT if version >= 6 else HEADER_DICT


def deflate_header(header_json: bytes, version: int) -> bytes:
    """The header as a file of format `version` (3 or later) stores it."""
    compressor = zlib.compressobj(9, zdict=header_dict(version))
    return compressor.compress(header_json) + compressor.flush()


def inflate_header(data: bytes, version: int) -> bytes:
    """The header JSON of a file of format `version` from its stored bytes."""
    zdict = header_dict(version)
    decompressor = zlib.decompressobj() if zdict is None else zlib.decompressobj(zdict=zdict)
    header_json = decompressor.decompress(data)
    if not decompressor.eof:
        raise ValueError("the header's zlib stream is cut short")
    return header_json
