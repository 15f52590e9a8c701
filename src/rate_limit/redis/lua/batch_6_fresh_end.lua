
          end
