"""Pure codecs: DL/T 645-2007, Modbus register maps, MQTT payloads, DTU packets. No I/O, no clock."""
