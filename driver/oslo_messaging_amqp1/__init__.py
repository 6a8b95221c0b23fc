# Licensed under the Apache License, Version 2.0 (the "License"); you may
# not use this file except in compliance with the License. You may obtain
# a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""An oslo.messaging driver for AMQP 1.0 (routers, brokers, RabbitMQ)."""
