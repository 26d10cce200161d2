# sensor_main.py: a starter program. It reads floats from a sensor (sensor.py: a
# stub you replace), quantizes them exactly as the host does, and prints the
# predicted class and its probability. Copy it as main.py to run at boot.
import time

import micromlp
import sensor

net = micromlp.load("model.mlp")
out = [0] * net.n_outputs
probs = [0.0] * net.n_outputs
x = net.inputs  # float32 inputs the engine owns: quantizing them allocates nothing
while sensor.read(x):
    net.run(net.quantize(x), out)
    k = out.index(max(out))
    print("class %d p=%.4f" % (k, net.probabilities(out, probs)[k]))
    try:
        time.sleep_ms(sensor.PERIOD_MS)
    except AttributeError:  # CPython
        time.sleep(sensor.PERIOD_MS / 1000)
