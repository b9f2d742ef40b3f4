from robustbench_cl.engine.metrics import wilson_interval


def test_wilson_interval_known_values():
    low, high = wilson_interval(50, 100)
    assert abs(low - 0.4038) < 1e-3 and abs(high - 0.5962) < 1e-3
    assert wilson_interval(0, 20)[0] == 0.0 and wilson_interval(20, 20)[1] == 1.0
    low, high = wilson_interval(0, 20)
    assert 0.15 < high < 0.18  # the rule of three's neighbour: never a zero-width interval
