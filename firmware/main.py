# main.py: an example for the board. It loads model.mlp, then reads lines of
# comma-separated input integers from the serial console and prints the
# predicted class and the output integers. Installed by `micromlp deploy --main`.
import micromlp

try:
    net = micromlp.load("model.mlp")
except MemoryError:
    net = micromlp.load("model.mlp", stream=True)  # weights stay in the file
out = [0] * net.n_outputs

print("micromlp: %d inputs -> %d outputs; type %d comma-separated ints" % (
    net.n_inputs, net.n_outputs, net.n_inputs))
while True:
    try:
        line = input("> ")
    except EOFError:
        break
    try:
        x = [int(v) for v in line.split(",")]
        net.run(x, out)
        print("class", out.index(max(out)), "outputs", out)
    except ValueError as e:
        print("error:", e)
