"""Step-by-step decoding (greedy, sampling, beam search) against plain-torch references."""
import itertools

import pytest
import torch
import torch.nn.functional as F

from fastvae.nn import LSTMDecoder

BOS, EOS = 1, 2


def make_decoder(V=11, E=6, H=10, nz=3):
    decoder = LSTMDecoder(V, E, H, nz, dropout_in=0.5, dropout_out=0.5)
    with torch.no_grad():
        for p in decoder.parameters():
            p.uniform_(-0.8, 0.8)
    return decoder


def sequence_log_prob(decoder, z_row, tokens):
    """log p(tokens | z) by teacher forcing through forward (tokens may end with </s>)."""
    inputs = torch.tensor([[BOS] + tokens[:-1]])
    with torch.no_grad():
        logp = F.log_softmax(decoder.eval()(inputs, z_row[None]).double(), -1)[0]
    return logp.gather(1, torch.tensor(tokens)[:, None]).sum().item()


def greedy_reference(decoder, z, max_len):
    """Greedy decoding with nn.LSTMCell in a Python loop, on the decoder's weights."""
    cell = torch.nn.LSTMCell(decoder.emb_dim + decoder.latent_dim, decoder.hidden_dim)
    cell.load_state_dict({"weight_ih": decoder.weight_ih_l0, "weight_hh": decoder.weight_hh_l0,
                          "bias_ih": decoder.bias_ih_l0, "bias_hh": decoder.bias_hh_l0})
    out = []
    with torch.no_grad():
        for row in z:
            c = decoder.latent_to_cell(row[None])
            h, token, ids = c.tanh(), BOS, []
            for _ in range(max_len):
                x = torch.cat([decoder.embed.weight[token][None], row[None]], -1)
                h, c = cell(x, (h, c))
                token = int(decoder.output(h).argmax())
                if token == EOS:
                    break
                ids.append(token)
            out.append(ids)
    return out


def test_greedy_matches_lstm_cell_loop_and_restores_mode():
    decoder = make_decoder()
    decoder.train()
    z = torch.randn(9, 3) * 2
    got = decoder.generate(z, BOS, EOS, 12)
    assert got == greedy_reference(decoder, z, 12)
    assert decoder.training  # generate runs in eval mode and restores the mode
    assert all(len(row) <= 12 and EOS not in row for row in got)


def test_beam_of_one_is_greedy_and_wide_beam_is_exact():
    decoder = make_decoder(V=4, E=3, H=5, nz=2)
    z = torch.randn(3, 2) * 2
    assert decoder.generate(z, BOS, EOS, 6, strategy="beam", beam_size=1) == decoder.generate(z, BOS, EOS, 6)
    # generate keeps at most V = 4 hypotheses (beam_size is capped at the vocabulary), which is every hypothesis for two
    # steps; at three steps the 16 live ones do not fit, and for some seeds (one in CI) the beam missed the best
    max_len = 2
    got = decoder.generate(z, BOS, EOS, max_len, strategy="beam", beam_size=64)
    for b in range(3):
        candidates = []
        for n in range(max_len + 1):
            for words in itertools.product(range(4), repeat=n):
                if EOS in words:
                    continue
                full = list(words) + ([EOS] if n < max_len else [])  # at max_len a hypothesis may stop unfinished
                if full:
                    candidates.append((sequence_log_prob(decoder, z[b], full), list(words)))
        best = max(candidates, key=lambda c: c[0])
        assert sequence_log_prob(decoder, z[b], got[b] + ([EOS] if len(got[b]) < max_len else [])) == \
            pytest.approx(best[0], abs=1e-6)


def test_beam_batched_equals_one_by_one():
    decoder = make_decoder()
    z = torch.randn(5, 3) * 2
    batched = decoder.generate(z, BOS, EOS, 10, strategy="beam", beam_size=4)
    single = [decoder.generate(z[b:b + 1], BOS, EOS, 10, strategy="beam", beam_size=4)[0] for b in range(5)]
    assert batched == single


def test_sampling_top_k_temperature_and_generator():
    decoder = make_decoder()
    z = torch.randn(6, 3)
    assert decoder.generate(z, BOS, EOS, 10, strategy="sample", top_k=1) == decoder.generate(z, BOS, EOS, 10)
    draws = [decoder.generate(z, BOS, EOS, 10, strategy="sample", generator=torch.Generator().manual_seed(7))
             for _ in range(2)]
    assert draws[0] == draws[1]
    # Every sampled token is among the top-3 next-token choices at its position.
    rows = decoder.generate(z, BOS, EOS, 10, strategy="sample", top_k=3, temperature=2.0)
    for b, row in enumerate(rows):
        if not row:
            continue
        inputs = torch.tensor([[BOS] + row])
        with torch.no_grad():
            logits = decoder.eval()(inputs, z[b:b + 1])[0, :-1]
        top3 = logits.topk(3, dim=-1).indices
        assert all(tok in top3[t].tolist() for t, tok in enumerate(row))
    # A very low temperature is greedy.
    assert decoder.generate(z, BOS, EOS, 10, strategy="sample", temperature=1e-6) == decoder.generate(z, BOS, EOS, 10)


def test_stops_at_eos_and_max_len_zero():
    decoder = make_decoder()
    with torch.no_grad():  # only </s> and token 5 can win: the logit of one is minus the other's
        decoder.output.weight.zero_()
        decoder.output.weight[EOS] = 1.0
        decoder.output.weight[5] = -1.0
    z = torch.randn(4, 3)
    for strategy in ("greedy", "sample", "beam"):
        out = decoder.generate(z, BOS, EOS, 7, strategy=strategy, top_k=1)
        assert len(out) == 4 and all(EOS not in row and len(row) <= 7 for row in out)
    assert decoder.generate(z, BOS, EOS, 0) == [[], [], [], []]


def test_generate_bad_arguments():
    decoder = make_decoder()
    z = torch.randn(2, 3)
    with pytest.raises(ValueError, match="unknown strategy"):
        decoder.generate(z, BOS, EOS, 5, strategy="nucleus")
    with pytest.raises(ValueError, match="z must be"):
        decoder.generate(torch.randn(2, 4), BOS, EOS, 5)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        decoder.generate(z, BOS, EOS, 5, strategy="sample", temperature=0)
    with pytest.raises(ValueError, match="top_k must be"):
        decoder.generate(z, BOS, EOS, 5, strategy="sample", top_k=-1)
    with pytest.raises(ValueError, match="beam_size must be"):
        decoder.generate(z, BOS, EOS, 5, strategy="beam", beam_size=0)
    with pytest.raises(ValueError, match="eos_id must be a token id"):
        decoder.generate(z, BOS, 99, 5)
    with pytest.raises(ValueError, match="max_len must be"):
        decoder.generate(z, BOS, EOS, -1)
