# sensor.py: where sensor_main.py's features come from. This stub replays recorded
# readings from sensor_rows.txt (one comma-separated line of floats per reading), so
# the starter runs on an emulated board; replace read() with your sensor, e.g.
#
#   from machine import ADC, Pin           # a potentiometer or a thermistor
#   adc = ADC(Pin(26))
#   def read(x):
#       x[0] = adc.read_u16() * 3.3 / 65535  # volts, as the model was trained on
#       return True
#
#   from machine import I2C, Pin           # an accelerometer (MPU-6050 at 0x68)
#   i2c = I2C(0, scl=Pin(1), sda=Pin(0))
#   def read(x):
#       b = i2c.readfrom_mem(0x68, 0x3B, 6)
#       for i in range(3):
#           v = b[2 * i] << 8 | b[2 * i + 1]
#           x[i] = (v - 65536 if v > 32767 else v) / 16384  # g
#       return True

PERIOD_MS = 100  # between readings

_f = None


def read(x):
    """Fill x (net.inputs: floats) with one reading; False when there are no more."""
    global _f
    if _f is None:
        _f = open("sensor_rows.txt")
    line = _f.readline()
    if not line:
        _f.close()
        return False
    vals = line.split(",")
    for i in range(len(x)):
        x[i] = float(vals[i])
    return True
