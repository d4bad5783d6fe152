"""The serving engine without HTTP: continuous batching equals `generate` per request, for both families."""
import queue

import pytest
import torch

import flashxlstm
from flashxlstm.generation import generate
from flashxlstm.serving import (ByteTokenizer, Engine, EngineConfig, SamplingParams, ServingTokenizer, SlotStates,
                                TextStream)
from flashxlstm.generation.cuda_graph import state_leaves
from flashxlstm.serving.slices import PrefillSlices, slice_shapes
from flashxlstm.serving.states import default_buckets

BYTES = ServingTokenizer(ByteTokenizer())


def neurips_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    cfg = flashxlstm.xLSTMLMConfig(vocab_size=256, embedding_dim=32, num_blocks=2, slstm_at="xLSTM[1:1]",
                                   mlstm_num_heads=2, slstm_num_heads=2)
    return flashxlstm.xLSTMLM(cfg).eval()


def large_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    cfg = flashxlstm.xLSTMLargeConfig(embedding_dim=32, num_heads=2, num_blocks=2, vocab_size=256)
    return flashxlstm.xLSTMLarge(cfg).eval()


FAMILIES = {"neurips": neurips_model, "large": large_model}


def reference(model, prompt, max_tokens, eos=None, **kw) -> list[int]:
    """What `generate` gives for one request alone, cut after its first EOS."""
    out = generate(model, torch.tensor([prompt]), max_tokens, eos_token_id=eos, **kw)[0, len(prompt):].tolist()
    if eos is not None and eos in out:
        out = out[: out.index(eos) + 1]
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_batch_equals_generate_each(family, gen):
    """16 requests, prompts of 1..70 tokens (prefilled in slices of 16 positions: 1 x 16, 2 x 8, 4 x 4),
    different max_tokens, max batch 6: requests join and leave the running batch at different steps; each
    output equals its own generate."""
    model = FAMILIES[family]()
    engine = Engine(model, BYTES, EngineConfig(max_batch=6, prefill_tokens=16))
    lengths = [1, 70, 3, 17, 33, 5, 64, 2, 9, 48, 16, 31, 1, 12, 27, 55]
    prompts = [torch.randint(0, 256, (n,), generator=gen).tolist() for n in lengths]
    params = [SamplingParams(max_tokens=4 + (i * 5) % 13, temperature=0) for i in range(len(prompts))]
    outs = engine.generate(prompts, params)
    eos = getattr(model.config, "eos_token_id", None)
    for prompt, p, out in zip(prompts, params, outs):
        want = reference(model, prompt, p.max_tokens, eos)
        assert out.token_ids == want
        assert out.finish_reason == ("stop" if eos is not None and want[-1] == eos else "length")
    assert engine.num_running == 0 and engine.stats.decode_steps > 0


def test_seeded_sampling_is_reproducible_whatever_else_runs(gen):
    """A seeded request draws the same tokens alone and in a batch (other rows, another row index, joining at
    another step); a greedy row beside sampling rows still equals generate; another seed draws differently."""
    model = neurips_model(1)
    engine = Engine(model, BYTES, EngineConfig(max_batch=4, prefill_tokens=8))
    prompts = [torch.randint(0, 256, (n,), generator=gen).tolist() for n in (7, 20, 3)]
    params = [SamplingParams(max_tokens=12, temperature=0.7, top_k=30, seed=11),
              SamplingParams(max_tokens=12, temperature=0),
              SamplingParams(max_tokens=12, temperature=1.3, top_p=0.8, seed=5)]
    outs = engine.generate(prompts, params)
    assert outs[1].token_ids == reference(model, prompts[1], 12)
    for i in (0, 2):
        alone = engine.generate([prompts[i]], [params[i]])[0]
        assert alone.token_ids == outs[i].token_ids and len(alone.token_ids) == 12
    reordered = engine.generate([prompts[2], prompts[0]], [params[2], params[0]])  # other rows, other order
    assert [o.token_ids for o in reordered] == [outs[2].token_ids, outs[0].token_ids]
    other = SamplingParams(max_tokens=12, temperature=1.3, top_p=0.8, seed=6)
    assert engine.generate([prompts[2]], [other])[0].token_ids != outs[2].token_ids


def test_long_prompt_prefills_in_chunks_while_others_decode(gen):
    model = neurips_model(2)
    engine = Engine(model, BYTES, EngineConfig(max_batch=4, prefill_tokens=8))
    short = engine.submit([5, 6, 7], SamplingParams(max_tokens=40, temperature=0))
    engine.step()  # prefilled, first token out, now in the batch
    assert engine.num_running == 1
    long_prompt = torch.randint(0, 256, (60,), generator=gen).tolist()
    long = engine.submit(long_prompt, SamplingParams(max_tokens=5, temperature=0))
    for k in range(7):  # 60 tokens at 8 per step: 7 steps of prefill, each with a decode step of `short`
        engine.step()
        assert engine.num_prefilling == 1 and engine.num_running == 1
    engine.step()  # the last chunk: `long` joins the batch
    assert engine.num_running == 2
    engine.run_until_done()
    short_out = list(short)
    # one output per step: the first token at prefill, then one per decode step, no step skipped
    assert [len(o.token_ids) for o in short_out] == [1] * 40
    assert [t for o in short_out for t in o.token_ids] == reference(model, [5, 6, 7], 40)
    assert long.result().token_ids == reference(model, long_prompt, 5)


def test_abort_frees_the_slot_and_leaves_others_alone(gen):
    model = large_model(3)
    engine = Engine(model, BYTES, EngineConfig(max_batch=2, eos_token_id=[]))
    prompts = [torch.randint(0, 256, (n,), generator=gen).tolist() for n in (4, 9, 6)]
    a = engine.submit(prompts[0], SamplingParams(max_tokens=30, temperature=0))
    b = engine.submit(prompts[1], SamplingParams(max_tokens=30, temperature=0))
    c = engine.submit(prompts[2], SamplingParams(max_tokens=10, temperature=0))
    for _ in range(4):
        engine.step()
    assert engine.num_running == 2 and engine.num_waiting == 1  # c waits for a slot
    engine.abort(a.request_id)
    engine.step()  # a leaves (row 0; b moves into it), c takes the free slot
    assert engine.num_running == 2 and engine.num_waiting == 0
    engine.run_until_done()
    ra = a.result()
    # the tokens that reached the host before the abort: the first (the slice that ended both prompts) and one
    # per decode step of the four iterations (joined rows decode in the iteration of their last slice, and on
    # the CPU the host takes a step's tokens in the iteration that queued it)
    assert ra.finish_reason == "abort" and len(ra.token_ids) == 5
    assert ra.token_ids == reference(model, prompts[0], 30)[:5]
    assert b.result().token_ids == reference(model, prompts[1], 30)
    assert c.result().token_ids == reference(model, prompts[2], 10)
    assert engine.stats.finished == {"abort": 1, "length": 2}


def test_stop_strings_and_stop_ids_end_the_output():
    model = neurips_model(4)
    engine = Engine(model, BYTES, EngineConfig(max_batch=2))
    free = engine.generate([[65, 66]], SamplingParams(max_tokens=30, temperature=0))[0]
    ids = free.token_ids
    one = engine.generate([[65, 66]], SamplingParams(max_tokens=1, temperature=0))[0]  # done at prefill
    assert one.token_ids == ids[:1] and one.finish_reason == "length" and engine.num_running == 0
    stop_id = ids[7]
    first = ids.index(stop_id)
    out = engine.generate([[65, 66]], SamplingParams(max_tokens=30, temperature=0, stop_token_ids=[stop_id]))[0]
    assert out.token_ids == ids[: first + 1] and out.finish_reason == "stop"
    # a stop string made of two generated bytes that decode to text
    text = BYTES.decode(ids)
    stop = text[10:12]
    cut = text.find(stop)
    out = engine.generate([[65, 66]], SamplingParams(max_tokens=30, temperature=0, stop=[stop]))[0]
    assert out.finish_reason == "stop" and out.text == text[:cut]


def test_text_stream_holds_back_possible_stop_strings():
    stream = TextStream(BYTES, stop=["STOP"])
    pieces = []
    for b in "héllo wor STOP and more".encode():
        if stream.add(b):
            break
        pieces.append(stream.take())
    pieces.append(stream.take(final=True))
    assert "".join(pieces) == "héllo wor "
    assert all("S" not in p for p in pieces)
    plain = TextStream(BYTES)
    got = []
    for b in "a€b".encode():  # a 3-byte character arrives byte by byte
        plain.add(b)
        got.append(plain.take())
    assert got == ["a", "", "", "€", "b"]


def test_invalid_requests_raise_clear_errors():
    engine = Engine(neurips_model(), BYTES, EngineConfig(max_batch=2, max_prompt_tokens=10, max_tokens_limit=20))
    with pytest.raises(ValueError, match="limit of 10"):
        engine.submit([1] * 11)
    with pytest.raises(ValueError, match=r"\[0, 256\)"):
        engine.submit([1, 300])
    with pytest.raises(ValueError, match="empty"):
        engine.submit("")
    with pytest.raises(ValueError, match="max_tokens 21 exceeds"):
        engine.submit("hi", SamplingParams(max_tokens=21))
    for bad in (dict(temperature=-1), dict(top_p=0), dict(top_k=-2), dict(seed=1.5), dict(stop=[""]),
                dict(max_tokens=0)):
        with pytest.raises(ValueError):
            engine.submit("hi", SamplingParams(**bad))
    assert not engine.has_work()


def test_slot_states_rows_are_independent_and_buckets_cover_capacity():
    assert default_buckets(6) == [1, 2, 4, 6] and default_buckets(1) == [1]
    model = large_model(5)
    slots = SlotStates(model, capacity=5)
    assert slots.buckets == [1, 2, 4, 5] and slots.row_bytes() > 0
    states = [slots.prefill(torch.tensor([[i + 1, 2 * i + 3]]))[1] for i in range(3)]
    for row, st in enumerate(states):
        slots.put(row, st)
    slots.move(2, 0)  # row 0 now holds sequence 2
    logits = slots.decode(torch.tensor([9, 9]))  # rows 0..1 in bucket 2: sequences 2 and 1
    for i, seq in enumerate((2, 1)):
        want, _ = model(torch.tensor([[9]]), state=states[seq])
        torch.testing.assert_close(logits[i], want[0, -1], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="capacity"):
        slots.decode(torch.zeros(6, dtype=torch.long))


def test_a_failing_step_ends_its_requests_and_the_engine_keeps_serving():
    engine = Engine(neurips_model(6), BYTES, EngineConfig(max_batch=2)).start()
    try:
        decode, calls = engine.slots.decode, []

        def flaky(tokens):
            calls.append(1)
            if len(calls) == 2:
                raise RuntimeError("boom")
            return decode(tokens)

        engine.slots.decode = flaky
        out = engine.submit([1, 2], SamplingParams(max_tokens=5, temperature=0)).result()
        assert out.finish_reason == "error" and "boom" in out.error and engine.stats.errors == 1
        out = engine.submit([1, 2], SamplingParams(max_tokens=5, temperature=0)).result()
        assert out.finish_reason == "length" and out.token_ids == reference(engine.model, [1, 2], 5)
    finally:
        engine.stop()


@pytest.mark.parametrize("family", FAMILIES)
def test_slice_lanes_equal_each_prefill_alone(family, gen):
    """A 4 x 4 slice over chunks of 3, 1, 4, 2 tokens (left-padded), two lanes from the empty state and two
    carrying an earlier chunk's state: each lane's logits and new state equal its own unpadded eager prefill;
    a 2 x 8 slice then leaves lanes 2 and 3 exactly as they were; a lane moves with its state."""
    model = FAMILIES[family](7)
    slots = SlotStates(model, capacity=2)
    slices = PrefillSlices(model, tokens=16, rows=4, empty=slots.empty_state())
    assert slices.shapes == [(1, 16), (2, 8), (4, 4)]
    chunks = [torch.randint(0, 256, (n,), generator=gen).tolist() for n in (3, 1, 4, 2)]
    earlier = [torch.randint(0, 256, (1, n), generator=gen) for n in (5, 8)]
    for lane in range(4):
        slices.reset(lane)
    slices.run([e[0].tolist() for e in earlier], (2, 8))  # lanes 0 and 1 take the earlier chunks ...
    slices.move(1, 3)
    slices.move(0, 1)  # ... and move to lanes 1 and 3
    slices.reset(0)
    starts = [None, slots.prefill(earlier[0])[1], None, slots.prefill(earlier[1])[1]]
    wants = [slots.prefill(torch.tensor([chunk]), state) for chunk, state in zip(chunks, starts)]
    logits = slices.run(chunks, (4, 4)).clone()
    assert logits.shape == (4, 256)
    for lane, (want_logits, want_state) in enumerate(wants):
        torch.testing.assert_close(logits[lane:lane + 1], want_logits, rtol=1e-5, atol=1e-5)
        for got, want in zip(state_leaves(slices.lane(lane)), state_leaves(want_state)):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    kept = [t.clone() for lane in (2, 3) for t in state_leaves(slices.lane(lane))]
    slices.run([[5, 6], [7]], (2, 8))
    assert all(torch.equal(a, b) for a, b in zip(kept, [t for lane in (2, 3) for t in state_leaves(slices.lane(lane))]))
    slices.move(3, 1)
    for got, want in zip(state_leaves(slices.lane(1)), state_leaves(wants[3][1])):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="do not fit"):
        slices.run([[1] * 5, [2]], (2, 4))
    with pytest.raises(ValueError, match="do not fit"):
        slices.run([[1], [], [3]], (4, 4))


def test_slice_shapes_and_the_shape_chosen():
    assert slice_shapes(512, 4) == [(1, 512), (2, 256), (4, 128)] and slice_shapes(3, 8) == [(1, 3), (2, 1)]
    with pytest.raises(ValueError, match="positive"):
        slice_shapes(0, 2)
    slices = PrefillSlices(large_model(8), tokens=16, rows=4, empty=SlotStates(large_model(8), 1).empty_state())
    assert slices.shape_for([40]) == (1, 16)  # one long prompt: the widest slice
    assert slices.shape_for([3, 2]) == (2, 8)  # 5 tokens as 2 x 8 or 4 x 4: fewer rows
    assert slices.shape_for([3, 2, 4, 1]) == (4, 4)  # short prompts share a slice
    assert slices.shape_for([30, 30]) == (1, 16)  # ties (16 tokens either way) go to fewer rows
    assert slices.shape_for([9, 8]) == (2, 8)


@pytest.mark.parametrize("family", FAMILIES)
def test_every_iteration_runs_at_most_one_fixed_shape_slice_and_outputs_equal_generate(family, gen):
    """Ten requests with prompts of 1..37 tokens, slices of 16 positions (1 x 16, 2 x 8, 4 x 4) while others
    decode: every slice has one of those shapes, at most one runs per iteration (so a decode step waits for
    at most one), slices mix first chunks with continued ones, and every greedy output equals its own
    `generate`."""
    model = FAMILIES[family](8)
    engine = Engine(model, BYTES, EngineConfig(max_batch=10, prefill_tokens=16, prefill_rows=4, eos_token_id=[]))
    calls = []
    run = engine.slices.run

    def spy(chunks, shape):
        calls.append((engine._iteration, shape, [len(c) for c in chunks]))
        return run(chunks, shape)

    engine.slices.run = spy
    lengths = [37, 3, 20, 1, 9, 16, 30, 5, 12, 24]
    prompts = [torch.randint(0, 256, (n,), generator=gen).tolist() for n in lengths]
    params = [SamplingParams(max_tokens=3 + i % 5, temperature=0) for i in range(len(prompts))]
    outs = engine.generate(prompts, params)
    for prompt, p, out in zip(prompts, params, outs):
        assert out.token_ids == reference(model, prompt, p.max_tokens)
    assert engine.stats.prefill_forwards == len(calls) and sum(n for *_, sizes in calls for n in sizes) == sum(lengths)
    assert len({it for it, *_ in calls}) == len(calls)  # one slice per iteration at most
    assert all(shape in [(1, 16), (2, 8), (4, 4)] and len(sizes) <= shape[0] and max(sizes) <= shape[1]
               for _, shape, sizes in calls)
    assert {shape for _, shape, _ in calls} >= {(1, 16), (4, 4)}


def test_inter_token_gaps_with_a_slice_are_flagged_on_the_gap_they_lengthen(gen, monkeypatch):
    """A slice that takes a second (on a clock that only slices move) while a request decodes: exactly the gaps
    flagged after_prefill hold a slice (the CPU runs synchronously, as the device does when it is the
    bottleneck); the others hold none."""
    import flashxlstm.serving.engine as engine_module

    clock = [0.0]
    monkeypatch.setattr(engine_module, "time", type("Clock", (), {"perf_counter": staticmethod(lambda: clock[0]),
                                                                  "monotonic": staticmethod(lambda: clock[0])}))
    engine = Engine(large_model(11), BYTES, EngineConfig(max_batch=2, prefill_tokens=8, eos_token_id=[]))
    run = engine.slices.run

    def slow(chunks, shape):
        clock[0] += 1.0
        return run(chunks, shape)

    engine.slices.run = slow
    short = engine.submit([5, 6, 7], SamplingParams(max_tokens=24, temperature=0))
    for _ in range(3):
        engine.step()
    long = engine.submit(torch.randint(0, 256, (40,), generator=gen).tolist(), SamplingParams(max_tokens=2))
    engine.run_until_done()
    outs = list(short)
    flagged = [b.after_prefill for b in outs[1:]]
    gaps = [b.time - a.time for a, b in zip(outs, outs[1:])]
    assert sum(flagged) == 5  # 40 tokens in slices of 8
    assert [gap == 1.0 for gap in gaps] == flagged and all(gap == 0.0 for gap, f in zip(gaps, flagged) if not f)
    assert long.result().finish_reason == "length"


def test_one_event_loop_wake_up_per_step_for_all_streams():
    """Outputs for requests on an event loop go out once per step per loop, in order, not once per token."""
    class Loop:  # records call_soon_threadsafe calls and runs them when asked, as an event loop would
        def __init__(self):
            self.calls = []

        def call_soon_threadsafe(self, fn, *args):
            self.calls.append((fn, args))

        def run(self):
            for fn, args in self.calls:
                fn(*args)

    loop = Loop()
    engine = Engine(neurips_model(9), BYTES, EngineConfig(max_batch=4, prefill_tokens=8, eos_token_id=[]))
    handles = [engine.submit([1 + i, 2], SamplingParams(max_tokens=3, temperature=0), loop=loop) for i in range(3)]
    for h in handles:  # read back without an event loop: a plain queue takes put_nowait alike
        h._queue = queue.SimpleQueue()
    steps = 0
    while engine.has_work():
        engine.step()
        steps += 1
    # two steps: the first prefilled all three prompts in one slice and decoded them (their first and second
    # tokens), the second decoded their third; each step one wake-up carrying all three streams' tokens
    assert [len(args[0]) for _, args in loop.calls] == [6, 3] and steps == 2
    loop.run()
    for i, h in enumerate(handles):
        assert [t for out in h for t in out.token_ids] == reference(engine.model, [1 + i, 2], 3)
