from plugin_base import PluginBase

class ExamplePlugin(PluginBase):
    def register(self):
        @self.app.route("/example")
        def example():
            return "Hello from Example Plugin!"
