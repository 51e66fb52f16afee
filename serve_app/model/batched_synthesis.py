"""Batched synthesis for kokoro's KModel: several utterances of different lengths in one pass.

`KModel.forward_with_tokens` speaks one utterance. `synthesize_batch` speaks several, each
exactly as it would alone, and batches the part that costs: the decoder and its iSTFTNet
vocoder, ~95% of the time. Prosody (ALBERT, durations, F0 and energy) runs per item with
kokoro's own shapes, because the vocoder's source integrates F0 into a phase over the whole
utterance: batched arithmetic changes F0 in its last bits (~1e-6) and that reaches the audio at
~0.1. Batched, instance norms take statistics over each item's own frames; between layers
padded positions may hold anything (finite), and every layer that mixes time gets zeros there,
so a convolution at an item's edge sees the zeros it sees alone. What cannot be padded (the
source, the STFT with its reflect padding, the iSTFT whose overlap-add normalises by the
windows of the frames that exist) runs per item; it is cheap.

The vocoder draws noise. Each item draws from its own `torch.Generator`, in kokoro's order and
with kokoro's shapes and memory layouts, so a seeded item gives exactly the audio of
`torch.manual_seed(seed); model.forward_with_tokens(input_ids[None], ref_s, speed)`.
"""
from collections.abc import Callable
from dataclasses import dataclass

from kokoro import KModel
from kokoro.istftnet import AdaIN1d, AdainResBlk1d, AdaINResBlock1, Decoder, Generator, SourceModuleHnNSF
import torch
import torch.nn.functional as F

_STYLE_SPLIT = 128  # ref_s[:, :128] drives the vocoder, ref_s[:, 128:] the prosody
_RSQRT_2 = torch.rsqrt(torch.tensor(2))  # AdainResBlk1d's output scale, computed as kokoro does


@dataclass
class SynthesisItem:
    input_ids: torch.Tensor   # 1-D LongTensor of token ids INCLUDING the leading and trailing pad 0
    ref_s: torch.Tensor       # [1, 256] style vector (the voice pack row)
    speed: float = 1.0
    seed: int | None = None   # None: fresh noise, its seed drawn from torch's global RNG


@dataclass
class SynthesisOutput:
    audio: torch.Tensor       # 1-D float32 on the CPU, len == 600 * pred_dur.sum()
    pred_dur: torch.Tensor    # 1-D LongTensor on the CPU, one duration per input token


@dataclass
class _Text:
    """One item's tokens on the model's device, encoded as KModel encodes them."""
    ids: torch.Tensor        # [1, T]
    ref_s: torch.Tensor      # [1, 256]
    d: torch.Tensor          # the duration encoder's output, [1, T, C]
    pred_dur: torch.Tensor   # [T]


@torch.inference_mode()
def synthesize_batch(model: KModel, items: list[SynthesisItem],
                     vocoder: Callable[..., tuple[torch.Tensor, torch.Tensor]] | None = None) -> list[SynthesisOutput]:
    """Synthesise every item in one pass; each result equals the item's unbatched synthesis.

    `vocoder` runs the decoder's network (a `Vocoder`, or the same compiled); unset, `Vocoder(model.decoder)`."""
    if not items:
        return []
    device = model.device
    generators = [_noise_generator(item.seed, device) for item in items]
    # All copies to the device first, while no work is queued for them to wait on.
    inputs = [(item.input_ids.to(device)[None], item.ref_s.to(device)) for item in items]
    texts = [_encode(model, ids, ref_s, item.speed) for (ids, ref_s), item in zip(inputs, items)]
    # The one sync: the frame counts fix every later shape.
    pred_durs = torch.cat([text.pred_dur for text in texts]).cpu().split([len(text.pred_dur) for text in texts])
    frames = _Frames(torch.stack([pred_dur.sum() for pred_dur in pred_durs]), device)
    inputs = [_decoder_inputs(model, text, int(count)) for text, count in zip(texts, frames.counts)]
    asr, f0, n = (_pad_stack(parts) for parts in zip(*inputs))
    voice = torch.cat([text.ref_s[:, :_STYLE_SPLIT] for text in texts])
    # The harmonic source stays outside the vocoder, eager: its phase is a long cumulative sum that
    # follows the last bit of F0 (see _harmonic_spectrum), so fused arithmetic there would move the audio.
    har = _harmonic_spectrum(model.decoder.generator, f0, frames, generators)
    vocoder = Vocoder(model.decoder) if vocoder is None else vocoder
    spec, phase = vocoder(asr, f0, n, voice, har, frames.masks(model.decoder))
    # Per item: the iSTFT normalises each sample by the windows of the frames that exist.
    lengths = (frames.counts * _upsampling(model.decoder) + 1).tolist()
    istft = model.decoder.generator.stft.inverse
    audio = [istft(spec[b:b + 1, :, :length], phase[b:b + 1, :, :length]).squeeze() for b, length in enumerate(lengths)]
    return [SynthesisOutput(a.cpu(), pred_dur) for a, pred_dur in zip(audio, pred_durs)]


def _noise_generator(seed: int | None, device: torch.device) -> torch.Generator:
    if seed is None:
        # From the global CPU RNG, so torch.manual_seed before a call still makes it reproducible.
        seed = int(torch.randint(2**62, ()))
    return torch.Generator(device).manual_seed(seed)


def _unpadded(ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The lengths (on the CPU, as kokoro's modules pack with them) and the padding mask of one item's ids [1, T]."""
    return torch.tensor([ids.shape[1]]), torch.zeros_like(ids, dtype=torch.bool)


def _encode(model: KModel, ids: torch.Tensor, ref_s: torch.Tensor, speed: float) -> _Text:
    """KModel's duration prediction for one item's ids [1, T], with its shapes; the durations stay on the device."""
    bert = model.bert(ids, attention_mask=torch.ones_like(ids, dtype=torch.int))
    d_en = model.bert_encoder(bert).transpose(-1, -2)
    d = model.predictor.text_encoder(d_en, ref_s[:, _STYLE_SPLIT:], *_unpadded(ids))
    x, _ = model.predictor.lstm(d)
    duration = torch.sigmoid(model.predictor.duration_proj(x)).sum(-1) / speed
    return _Text(ids, ref_s, d, pred_dur=torch.round(duration).clamp(min=1).long()[0])


def _decoder_inputs(model: KModel, text: _Text, n_frames: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One item's text features per frame [C, frames], F0 and energy curves [2 * frames], as KModel makes them."""
    # KModel multiplies by a one-hot alignment; selecting each frame's token gives the same values.
    token_of_frame = torch.repeat_interleave(
        torch.arange(len(text.pred_dur), device=text.ids.device), text.pred_dur, output_size=n_frames)
    en = text.d.transpose(-1, -2).index_select(2, token_of_frame)
    f0, n = model.predictor.F0Ntrain(en, text.ref_s[:, _STYLE_SPLIT:])
    t_en = model.text_encoder(text.ids, *_unpadded(text.ids))
    return t_en.index_select(2, token_of_frame)[0], f0[0], n[0]


def _pad_stack(parts: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Tensors [..., T_i] zero-padded at the end to the longest, stacked into [B, ..., T]."""
    width = max(part.shape[-1] for part in parts)
    return torch.stack([F.pad(part, (0, width - part.shape[-1])) for part in parts])


class _Frames:
    """Each item's predicted frame count, and masks of its valid positions at multiples of the frame rate."""

    def __init__(self, counts: torch.Tensor, device: torch.device):
        self.counts = counts  # on the CPU
        self.longest = int(counts.max())
        self._counts = counts.to(device)
        # Every batch of several items is masked, padded or not: one code path (and one compiled graph)
        # for all of them, where equal lengths would otherwise need a graph of their own.
        self._batched = len(counts) > 1

    def masks(self, decoder: Decoder) -> dict[tuple[int, int], torch.Tensor]:
        """For each rate the decoder runs at, (scale, extra): 1.0 at each item's first `count * scale + extra`
        positions, [B, 1, longest * scale + extra].

        Empty for a batch of one: the layers then run exactly as in kokoro.
        """
        if not self._batched:
            return {}
        masks = {}
        for scale, extra in _rates(decoder):
            positions = torch.arange(self.longest * scale + extra, device=self._counts.device)
            masks[scale, extra] = (positions < (self._counts * scale + extra)[:, None]).unsqueeze(1).float()
        return masks


def _rates(decoder: Decoder) -> list[tuple[int, int]]:
    """Every (multiple of the frame rate, extra positions) the decoder's layers run at, in order."""
    scale = 2 if any(block.upsample_type != "none" for block in decoder.decode) else 1
    rates = [(1, 0), (scale, 0)]
    gen = decoder.generator
    for i, up in enumerate(gen.ups):
        scale *= up.stride[0]
        rates.append((scale, int(i == gen.num_upsamples - 1)))  # the last stage gains one frame from its pad
    return rates


def _upsampling(decoder: Decoder) -> int:
    """Output positions of the vocoder per frame (before the iSTFT's own extra frame)."""
    return _rates(decoder)[-1][0]


# In-place arithmetic on the vocoder's activations (tens of MB each) spares an allocation per op;
# on the CPU each large one is fresh memory that page-faults in. Operands are swapped only where
# IEEE arithmetic is commutative, so the values stay kokoro's to the bit.


def _zero_pad_(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    return x if mask is None else x.mul_(mask)


def _adain(adain: AdaIN1d, x: torch.Tensor, style: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """AdaIN1d; with a mask, statistics over each item's valid positions only, and zeros at its padding."""
    gamma, beta = adain.fc(style).unsqueeze(-1).chunk(2, dim=1)
    if mask is None:
        return adain.norm(x).mul_(1 + gamma).add_(beta)
    norm = adain.norm
    count = mask.sum(-1, keepdim=True)
    # Sums as a masked reduction, not a product with the mask: inductor picks matrix-product code by
    # size, which would split compiled batches into graphs by length.
    centred = (x - (x * mask).sum(-1, keepdim=True) / count).mul_(mask)  # then the variance of the centred values
    var = torch.linalg.vector_norm(centred, dim=-1, keepdim=True).square_() / count
    # The norm's affine and the style's in one per-channel scale and shift.
    scale = (1 + gamma) * norm.weight[:, None] * torch.rsqrt(var + norm.eps)
    return centred.mul_(scale).add_((1 + gamma) * norm.bias[:, None] + beta).mul_(mask)


def _snake(x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Snake1D, x + sin(alpha x)^2 / alpha as kokoro computes it; keeps zeros zero."""
    return torch.mul(alpha, x).sin_().pow_(2).mul_(1 / alpha).add_(x)


def _adain_res_blk1d(block: AdainResBlk1d, x, style, mask_in, mask_out) -> torch.Tensor:
    """kokoro's AdainResBlk1d (dropout is inactive at inference); mask_out is at twice the rate when it upsamples."""
    r = block.actv(_adain(block.norm1, x, style, mask_in))
    if block.upsample_type != "none":
        r = _zero_pad_(block.pool(r), mask_out)
    r = block.actv(_adain(block.norm2, block.conv1(r), style, mask_out))
    return block.conv2(r).add_(block._shortcut(x)).mul_(_RSQRT_2)  # the shortcut does not mix time


def _adain_res_block1(block: AdaINResBlock1, x, style, mask) -> torch.Tensor:
    """kokoro's AdaINResBlock1 (the vocoder's resblocks, with Snake activations)."""
    layers = zip(block.convs1, block.convs2, block.adain1, block.adain2, block.alpha1, block.alpha2)
    for c1, c2, n1, n2, a1, a2 in layers:
        xt = _adain(n2, c1(_snake(_adain(n1, x, style, mask), a1)), style, mask)
        x = c2(_snake(xt, a2)).add_(x)
    return x


class Vocoder(torch.nn.Module):
    """kokoro's Decoder from text features, F0 and energy to the spectrum and phase the iSTFT takes.

    Every operator here is batched and has a fixed shape per item count, so `torch.compile` with
    dynamic shapes fuses it once for every length: its many elementwise and normalisation passes
    between convolutions are what bounds eager PyTorch by memory traffic. `masks` are
    `_Frames.masks(decoder)`: empty for a batch of one.
    """

    def __init__(self, decoder: Decoder):
        super().__init__()
        self.decoder = decoder

    def forward(self, asr, f0, n, voice, har, masks: dict[tuple[int, int], torch.Tensor]):
        decoder = self.decoder
        at_frames = masks.get((1, 0))
        f0_down, n_down = decoder.F0_conv(f0.unsqueeze(1)), decoder.N_conv(n.unsqueeze(1))
        x = _adain_res_blk1d(decoder.encode, torch.cat([asr, f0_down, n_down], 1), voice, at_frames, at_frames)
        asr_res = decoder.asr_res(asr)
        scale = 1
        for block in decoder.decode:
            if scale == 1:  # the residual features join every block up to the one that upsamples
                x = torch.cat([x, asr_res, f0_down, n_down], 1)
            mask_in = masks.get((scale, 0))
            scale *= 1 if block.upsample_type == "none" else 2
            x = _adain_res_blk1d(block, x, voice, mask_in, masks.get((scale, 0)))
        return _generate(decoder.generator, x, voice, har, masks, scale)


def _generate(gen: Generator, x, voice, har, masks, scale: int) -> tuple[torch.Tensor, torch.Tensor]:
    """kokoro's iSTFTNet Generator up to the iSTFT; x is at `scale` times the frame rate, har zero past each item."""
    mask = masks.get((scale, 0))
    for i, (up, noise_conv, noise_res) in enumerate(zip(gen.ups, gen.noise_convs, gen.noise_res)):
        x = up(_zero_pad_(F.leaky_relu(x, negative_slope=0.1, inplace=True), mask))
        last = i == gen.num_upsamples - 1
        if last:
            x = gen.reflection_pad(x)  # pads on the left, where every item starts
        scale *= up.stride[0]
        mask = masks.get((scale, int(last)))  # the last stage gains one frame from the reflection pad
        x.add_(_adain_res_block1(noise_res, noise_conv(har), voice, mask))
        blocks = gen.resblocks[i * gen.num_kernels:(i + 1) * gen.num_kernels]
        xs = _adain_res_block1(blocks[0], x, voice, mask)
        for block in blocks[1:]:
            xs.add_(_adain_res_block1(block, x, voice, mask))
        x = xs.div_(gen.num_kernels)
    x = gen.conv_post(_zero_pad_(F.leaky_relu(x, inplace=True), mask))
    return torch.exp(x[:, :gen.post_n_fft // 2 + 1]), torch.sin(x[:, gen.post_n_fft // 2 + 1:])


def _harmonic_spectrum(gen: Generator, f0: torch.Tensor, frames: _Frames, generators) -> torch.Tensor:
    """The STFT of the harmonic source, [B, n_fft + 2, STFT frames], zero past each item's frames.

    Per item, with kokoro's shapes: the source's phase is a long cumulative sum, and the STFT's
    angle jumps by 2 pi where a bin crosses the negative real axis, so the audio follows the
    last bit of the source; batched float arithmetic would not give those bits.
    """
    spectra = []
    for curve, generator, length in zip(f0, generators, (frames.counts * 2).tolist()):  # f0: twice the frame rate
        samples = gen.f0_upsamp(curve[None, None, :length]).transpose(1, 2)
        source = _harmonic_source(gen.m_source, samples, generator).transpose(1, 2).squeeze(1)
        magnitude, phase = gen.stft.transform(source)
        spectra.append(torch.cat([magnitude, phase], dim=1)[0])
    return _pad_stack(spectra)


def _harmonic_source(source: SourceModuleHnNSF, f0: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """SourceModuleHnNSF's harmonic branch (kokoro's SineGen) on one item's f0 [1, samples, 1].

    kokoro's ops in kokoro's order, and its two draws from the item's generator in its order,
    shapes and memory layouts (the noise is randn_like of a transposed tensor: a contiguous draw
    of that shape gives other numbers). SourceModuleHnNSF's later randn_like(uv) is the call's
    last draw and its result is unused, so it is not drawn.
    """
    sine = source.l_sin_gen
    rad = (f0 * torch.arange(1, sine.dim + 1, device=f0.device, dtype=f0.dtype) / sine.sampling_rate) % 1
    initial_phase = torch.rand(1, sine.dim, device=f0.device, generator=generator)
    initial_phase[:, 0] = 0  # none for the fundamental
    rad[:, 0, :] = rad[:, 0, :] + initial_phase
    rad = F.interpolate(rad.transpose(1, 2), scale_factor=1 / sine.upsample_scale, mode="linear").transpose(1, 2)
    phase = torch.cumsum(rad, dim=1) * 2 * torch.pi
    phase = F.interpolate(phase.transpose(1, 2) * sine.upsample_scale, scale_factor=sine.upsample_scale,
                          mode="linear").transpose(1, 2)
    sines = torch.sin(phase) * sine.sine_amp
    uv = (f0 > sine.voiced_threshold).type(torch.float32)
    noise_amp = uv * sine.noise_std + (1 - uv) * sine.sine_amp / 3
    noise = torch.empty_like(sines).normal_(generator=generator)  # randn_like(sines), from the item's generator
    return source.l_tanh(source.l_linear(sines * uv + noise_amp * noise))
