"""CAN databases shipped with nearfield: uss.dbc describes the ultrasonic ECU's echo frames."""
